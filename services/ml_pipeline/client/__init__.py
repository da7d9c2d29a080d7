"""Calling downstream: the one HTTP client per service and the client-side balancer over replicas."""
