"""iothub: an IoT device hub with MQTT at its core."""

__version__ = "0.1.0"
