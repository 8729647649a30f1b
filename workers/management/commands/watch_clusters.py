"""`python manage.py watch_clusters`: the long-running cluster watcher (see workers/watcher.py)."""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand

from workers.watcher import Watcher


class Command(BaseCommand):
    help = "Watch every tenant cluster and keep endpoints' phases, conditions and progress current."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--tick", type=float, default=1.0, help="seconds between re-reads of loading endpoints"
        )

    def handle(self, *args, tick: float, **options) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.stdout.write("watching tenant clusters")
        Watcher(tick=tick).run(stop)
