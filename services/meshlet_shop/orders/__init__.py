"""orders: validates orders, reserves stock, charges, and lists orders page by page (SDK mode: ``meshlet.Mesh``)."""
