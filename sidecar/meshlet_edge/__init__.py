"""meshlet-edge: HTTP/JSON in front of the mesh, routed by the protos' google.api.http annotations."""
