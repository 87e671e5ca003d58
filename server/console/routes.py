"""One router for the app: the admin read routes the console needs, then the page itself."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.admin_console import router as admin_console_router
from server.console.router import router as static_router

# Include it before the jobs router: /admin/v1/jobs/schema would otherwise be read as a job id.
router = APIRouter()
router.include_router(admin_console_router)
router.include_router(static_router)
