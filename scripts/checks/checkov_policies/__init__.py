"""bqdrain's own checkov policies (CKV_BQD_*), loaded with --external-checks-dir."""
