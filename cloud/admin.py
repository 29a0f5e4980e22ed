"""What every app's admin shares: read-only registrations, and forms that ask the service first.

The admin changes nothing a service guards by writing fields itself: `save_model` and
`delete_model` call the app's service, and the form runs the same call beforehand in a savepoint
that is rolled back (`service_dry_run`), so what the service refuses is shown on the form next to
the field it names, not raised as a 500 after the form was accepted.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpResponseRedirect
from django.urls import reverse

from cloud.exceptions import ApplicationError


class ReadOnlyAdminMixin:
    """History written by the plane alone: it may be looked at, never added, changed or deleted."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def problem_as_validation_error(exc: ApplicationError, fields=()) -> ValidationError:
    """A service's refusal as a form error: on the field it names when the form has that field."""
    field = exc.errors[0].get("field") if exc.errors else None
    return ValidationError({field: exc.detail} if field in fields else exc.detail)


def service_dry_run(form: forms.Form, write) -> None:
    """Runs `write()` (the service call `save_model` will make) in a savepoint that is rolled
    back; a refusal becomes the form's ValidationError."""
    try:
        with transaction.atomic():
            write()
            transaction.set_rollback(True)
    except ApplicationError as exc:
        raise problem_as_validation_error(exc, form.fields) from None


class ServiceDeleteMixin:
    """Deletes through `delete_through_service(request, obj)`, which the admin using this mixin
    defines (a class without it fails when it is declared, not on the first delete). A refusal is an error message and
    the row stays (never Django's "deleted successfully", never a 500); the bulk action deletes
    one row at a time through the same call and says which it could not."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not callable(getattr(cls, "delete_through_service", None)):
            raise TypeError(f"{cls.__name__} uses ServiceDeleteMixin without a delete_through_service(request, obj)")

    def _delete_or_refuse(self, request, obj) -> str | None:
        try:
            with transaction.atomic():
                self.delete_through_service(request, obj)
        except ApplicationError as exc:
            return exc.detail
        return None

    def delete_model(self, request, obj):
        refusal = self._delete_or_refuse(request, obj)
        if refusal is not None:
            request._service_refusal = refusal

    def response_delete(self, request, obj_display, obj_id):
        refusal = getattr(request, "_service_refusal", None)
        if refusal is None:
            return super().response_delete(request, obj_display, obj_id)
        self.message_user(request, f"{obj_display} was not deleted: {refusal}", messages.ERROR)
        opts = self.model._meta
        return HttpResponseRedirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj_id],
                                            current_app=self.admin_site.name))

    def get_actions(self, request):
        actions = super().get_actions(request)
        if "delete_selected" in actions:
            actions["delete_selected"] = (ServiceDeleteMixin.delete_selected_through_service, "delete_selected",
                                          actions["delete_selected"][2])
        return actions

    @staticmethod
    def delete_selected_through_service(modeladmin, request, queryset):
        deleted = 0
        for obj in queryset:
            refusal = modeladmin._delete_or_refuse(request, obj)
            if refusal is None:
                deleted += 1
            else:
                modeladmin.message_user(request, f"{obj} was not deleted: {refusal}", messages.ERROR)
        if deleted:
            modeladmin.message_user(request, f"Deleted {deleted} of {len(queryset)}.", messages.SUCCESS)
