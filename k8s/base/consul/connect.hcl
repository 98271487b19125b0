# Shared by the Consul servers and the client agents (as Consul's Helm chart does with its extra-config).
# Connect on: the servers run the built-in CA; every agent signs its node's leaf certificates
# (/v1/agent/connect/ca/leaf/<service>), which is where meshlet's tls.source "consul" takes them.
connect {
  enabled = true
}
ports {
  grpc = 8502
}
ui_config {
  enabled = true
}
