"""Shared internals of the Quick, Draw! training toolkit: stroke parsing, packed store, metrics, schedule."""
