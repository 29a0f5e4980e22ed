"""Customer sign-up. Login and logout are Django's own views (accounts/urls.py)."""

from __future__ import annotations

from django.contrib.auth import login
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.generic import FormView

from django.contrib import messages
from django.views.decorators.http import require_POST

from accounts.confirmation import confirmation_send, email_confirm
from accounts.forms import SignupForm
from accounts.services import user_signup
from cloud.exceptions import ApplicationError

# Where a new user lands unless `next` says otherwise (e.g. back to /o/authorize/).
DEFAULT_AFTER_SIGNUP = "/deployments/"


class SignupView(FormView):
    template_name = "accounts/signup.html"
    form_class = SignupForm

    def get_context_data(self, **kwargs):
        return super().get_context_data(next=self._next_url(), **kwargs)

    def form_valid(self, form):
        try:
            user, _tenant = user_signup(email=form.cleaned_data["email"], password=form.cleaned_data["password1"],
                                        self_service=True)
        except ApplicationError as exc:  # a concurrent signup with the same email
            form.add_error("email", exc.detail)
            return self.form_invalid(form)
        # The link names this server's own host, through the configured EMAIL_BACKEND.
        confirmation_send(user=user, url_for=lambda token: self.request.build_absolute_uri(
            reverse("accounts:confirm", args=[token])))
        # Named explicitly: login() refuses to guess when several backends are configured.
        login(self.request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect(self._next_url())

    def _next_url(self) -> str:
        # Only same-site redirects: `next` comes from the query string and must not send a
        # freshly signed-up user to someone else's site (open redirect).
        candidate = self.request.POST.get("next") or self.request.GET.get("next") or ""
        if candidate and url_has_allowed_host_and_scheme(candidate, allowed_hosts={self.request.get_host()},
                                                         require_https=self.request.is_secure()):
            return candidate
        return DEFAULT_AFTER_SIGNUP


def confirm_email(request, token):
    try:
        email_confirm(token=token)
    except ApplicationError as exc:
        return render(request, "accounts/confirmed.html", {"error": exc.detail}, status=400)
    return render(request, "accounts/confirmed.html")


@require_POST
def confirm_resend(request):
    if request.user.is_authenticated and request.user.email:
        confirmation_send(user=request.user, url_for=lambda token: request.build_absolute_uri(
            reverse("accounts:confirm", args=[token])))
        messages.success(request, f"A new confirmation link is on its way to {request.user.email}.")
    return redirect(DEFAULT_AFTER_SIGNUP)
