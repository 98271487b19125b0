# prod only: Consul ACLs on, default deny (as consul-k8s ships them). Every request needs a token: the servers'
# come from the operator's bootstrap Secret, the client agents' and the shop pods' from `consul login` with the
# Kubernetes auth method that the consul-acl-init Job sets up (acl.yaml).
acl {
  enabled                  = true
  default_policy           = "deny"
  down_policy              = "extend-cache"
  enable_token_persistence = true
}
