"""Coordination between hosts through etcd: one client of the cluster (:mod:`.etcd`)."""
