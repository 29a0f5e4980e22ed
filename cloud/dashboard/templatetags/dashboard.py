from django import template
from django.template.loader import render_to_string
from django.utils.html import format_html

register = template.Library()


@register.simple_tag
def field_errors(errors, name):
    return render_to_string("dashboard/partials/field_errors.html", {"errs": errors.get(name), "fid": name})


@register.simple_tag
def field_aria(errors, name):
    # A field with errors says so to screen readers, and points at its messages.
    if errors.get(name):
        return format_html('aria-invalid="true" aria-describedby="{}-errors"', name)
    return ""


@register.filter
def getlist(querydict, key):
    return querydict.getlist(key) if hasattr(querydict, "getlist") else []


@register.filter
def index(values, i):
    """values[i], or "" past its end: a form's repeated rows put back in place."""
    try:
        return values[int(i)]
    except (IndexError, TypeError, ValueError):
        return ""
