"""opendlc: open quantization, HTP offline preparation and UDO packages for Snapdragon targets."""

__version__ = "0.1.0"
