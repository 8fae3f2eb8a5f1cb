"""Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from reading_history.api.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(
    service_metrics: MetricsDep, accept: Annotated[str | None, Header()] = None
) -> Response:
    """Expose the service's metrics for Prometheus to scrape."""
    body, content_type = service_metrics.render(accept or "")
    return Response(content=body, media_type=content_type)
