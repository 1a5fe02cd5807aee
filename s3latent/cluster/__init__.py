"""A fleet of gateways over one backend: membership, owner routing, invalidation, spillover.

Sits between the S3 front end (which imports it) and the object store; it never imports the
front end. docs/cluster.md describes the behaviour.
"""
