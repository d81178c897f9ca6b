"""Simulated devices: realistic signals over real MQTT. Uses only :mod:`iothub.devices` (it is a device)."""
