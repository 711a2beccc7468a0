"""Running an application: every service as a supervisord daemon, systemd units, logs."""
