"""Old log lines and events are deleted in bounded batches by periodic tasks (issue 16)."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from cloud.deployments import tasks
from cloud.deployments.models import Event, LogLine
from cloud.deployments.services.retention import events_purge, logs_purge
from tests.deployments.factories import EventFactory, LogLineFactory, ReplicaFactory

pytestmark = pytest.mark.django_db


def test_lines_older_than_the_retention_go_and_newer_ones_stay(settings):
    settings.LOG_RETENTION_DAYS = 7
    replica = ReplicaFactory()
    now = timezone.now()
    for i in range(25):
        LogLineFactory(replica=replica, seq=i + 1, ts=now - timedelta(days=8, minutes=i), message=f"old {i}")
    for i in range(3):
        LogLineFactory(replica=replica, seq=100 + i, ts=now - timedelta(days=6), message=f"new {i}")
    assert logs_purge(now=now, batch=10, max_batches=2) == 20  # bounded: a run stops after its batches
    assert LogLine.objects.filter(message__startswith="old").count() == 5
    assert logs_purge(now=now, batch=10) == 5
    assert sorted(LogLine.objects.values_list("message", flat=True)) == ["new 0", "new 1", "new 2"]
    assert logs_purge(now=now) == 0


def test_events_keep_longer_than_lines(settings):
    settings.EVENT_RETENTION_DAYS = 30
    now = timezone.now()
    old, recent = EventFactory(), EventFactory()
    Event.objects.filter(pk=old.pk).update(ts=now - timedelta(days=31))
    Event.objects.filter(pk=recent.pk).update(ts=now - timedelta(days=8))
    assert events_purge(now=now) == 1
    assert list(Event.objects.values_list("pk", flat=True)) == [recent.pk]


def test_the_purges_run_from_celery_beat():
    schedule = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"deployments.purge_logs", "deployments.purge_events"} <= schedule
    assert tasks.logs_purge.name == "deployments.purge_logs" and tasks.events_purge.name == "deployments.purge_events"
