from django.contrib.auth import views as auth_views
from django.urls import path

from accounts.views import DEFAULT_AFTER_SIGNUP, SignupView

app_name = "accounts"

urlpatterns = [
    path("signup/", SignupView.as_view(), name="signup"),
    path("login/", auth_views.LoginView.as_view(
        template_name="accounts/login.html", next_page=DEFAULT_AFTER_SIGNUP, redirect_authenticated_user=False,
    ), name="login"),
    # Django 5 logs out on POST only (a GET link could log anyone out from a forged image tag).
    path("logout/", auth_views.LogoutView.as_view(template_name="accounts/logged_out.html"), name="logout"),
]
