"""The daemon core: configuration, the runtime (composition root and lifecycle), scheduling,
device coordinators, the poll pipeline and its point table, supervision, systemd, logging."""
