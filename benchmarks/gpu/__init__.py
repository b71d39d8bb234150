"""A GPU readiness check of vrm (`check.sh`, `check.py`) and the wheels it carries to a machine without network
(`prepare.sh`)."""
