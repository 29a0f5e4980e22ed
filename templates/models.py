"""Deployment templates: a named image with sensible defaults (ollama, vllm, jupyter, ...)."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


class Template(models.Model):
    # Null tenant: a global template everyone sees; otherwise private to that tenant.
    tenant = models.ForeignKey("accounts.Tenant", null=True, blank=True, on_delete=models.CASCADE, related_name="templates")
    slug = models.SlugField(max_length=50)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    image = models.CharField(max_length=512)
    default_env = models.JSONField(default=dict, blank=True)
    entrypoint = models.JSONField(null=True, blank=True)
    args = models.JSONField(null=True, blank=True)
    traffic_port = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(65535)])
    min_gpus = models.PositiveSmallIntegerField(default=0)
    max_gpus = models.PositiveSmallIntegerField(default=8)
    health_check_path = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "slug"], name="template_unique_tenant_slug"),
            models.UniqueConstraint(fields=["slug"], condition=Q(tenant__isnull=True), name="template_unique_global_slug"),
            models.CheckConstraint(condition=Q(min_gpus__lte=models.F("max_gpus")), name="template_min_le_max_gpus"),
        ]

    def __str__(self) -> str:
        return self.slug if self.tenant_id is None else f"{self.tenant_id}/{self.slug}"

    @property
    def is_global(self) -> bool:
        return self.tenant_id is None
