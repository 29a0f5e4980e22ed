# The control-plane image used by docker-compose.yml (web, worker, beat). Node agents run on
# GPU hosts directly (they need KVM, VFIO and the host network), not in this image.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cloud cloud
COPY accounts accounts
COPY billing billing
COPY nodes nodes
COPY protocol protocol
COPY templates templates
COPY manage.py ./
RUN pip install --no-cache-dir . && python manage.py collectstatic --noinput
ENV WHITENOISE_USE_FINDERS=0
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "cloud.asgi:application"]
