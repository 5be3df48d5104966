"""Fulfillment activities, the warehouse interface and the marketplace client."""
