"""The local platform: real PostgreSQL, Redis and a Kubernetes control plane on loopback.

Every process binds to 127.0.0.1, keeps its data and logs under the state directory (outside the
repo), and is stopped by `down`. `up` is idempotent: a healthy component is left alone.
"""
