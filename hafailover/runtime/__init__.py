"""The runtime: effects the asyncio daemon performs on behalf of the sans-IO protocol core.

Every slow effect (health checks, notify hooks, state persistence, systemd notification,
logging) sits behind a small port with a real and a fake implementation. Nothing here may block
the event loop for long; results come back to the daemon as callbacks.
"""
