"""HTTP services. The coordinator app (`ailo.server.app`) composes one APIRouter per domain."""
