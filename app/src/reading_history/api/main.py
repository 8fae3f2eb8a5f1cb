"""Every route of the service, collected in one router.

Each resource router carries its full path prefix itself, so that the route a
request matched names the whole path template in logs and metric labels.
"""

from fastapi import APIRouter

from reading_history.api.routes import export, health, history, metrics, preferences

api_router = APIRouter()
api_router.include_router(health.liveness_router)
api_router.include_router(metrics.router)
api_router.include_router(health.router)
api_router.include_router(export.router)
api_router.include_router(history.router)
api_router.include_router(preferences.router)
