"""Planty Broker: the gateway between ESP32 plant-care devices and the Planty server."""

__version__ = "0.1.0"
