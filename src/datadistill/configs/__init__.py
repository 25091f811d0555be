"""Shipped YAML configs, addressable by name: <dataset>/<method>_ipc<N>."""
