"""Running the cluster: the local launcher (`python -m deploy.local`), nginx.conf rendering,
and the Docker and Kubernetes files beside them."""
