from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from accounts.throttle import guarded, throttled
from accounts.views import DEFAULT_AFTER_SIGNUP, SignupView, confirm_email, confirm_resend

app_name = "accounts"

urlpatterns = [
    path("signup/", throttled("signup")(SignupView.as_view()), name="signup"),
    # Login counts failures only (accounts/throttle.py): a user who signs in often is never slowed.
    path("login/", guarded("login")(auth_views.LoginView.as_view(
        template_name="accounts/login.html", next_page=DEFAULT_AFTER_SIGNUP, redirect_authenticated_user=False,
    )), name="login"),
    # Django 5 logs out on POST only (a GET link could log anyone out from a forged image tag).
    path("logout/", auth_views.LogoutView.as_view(template_name="accounts/logged_out.html"), name="logout"),
    path("confirm/resend/", throttled("confirm-resend")(confirm_resend), name="confirm-resend"),
    path("confirm/<str:token>/", confirm_email, name="confirm"),
    # Password reset mails through EMAIL_BACKEND (the console unless the environment names another).
    path("password-reset/", throttled("password-reset")(auth_views.PasswordResetView.as_view(
        template_name="accounts/password_reset.html", email_template_name="accounts/password_reset_email.txt",
        success_url=reverse_lazy("accounts:password_reset_done"),
    )), name="password_reset"),
    path("password-reset/sent/", auth_views.PasswordResetDoneView.as_view(
        template_name="accounts/password_reset_done.html"), name="password_reset_done"),
    path("reset/<uidb64>/<token>/", auth_views.PasswordResetConfirmView.as_view(
        template_name="accounts/password_reset_confirm.html", success_url=reverse_lazy("accounts:password_reset_complete"),
    ), name="password_reset_confirm"),
    path("reset/done/", auth_views.PasswordResetCompleteView.as_view(
        template_name="accounts/password_reset_complete.html"), name="password_reset_complete"),
]
