"""gateway: the shop's entry point (SDK mode): Checkout creates an order through orders."""
