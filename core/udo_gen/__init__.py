"""UDO package generation from the SDK's config format."""
