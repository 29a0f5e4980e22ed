"""Meters are rewritten by every metering pass (a row per running replica a minute). With room
left on each page, PostgreSQL updates them in place (HOT: no new index entries for the
unchanged keys), which keeps the pass's writes and the table's bloat down."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0005_usage_record_columns_required'),
    ]

    operations = [
        migrations.RunSQL("ALTER TABLE billing_meter SET (fillfactor = 50)",
                          "ALTER TABLE billing_meter RESET (fillfactor)"),
    ]
