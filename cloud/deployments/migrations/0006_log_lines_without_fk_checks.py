"""Log lines lose their database-level foreign-key constraints and the single-column indexes
that came with them (issue 16, bench/logs.py).

Django makes foreign keys DEFERRABLE INITIALLY DEFERRED, so a batch of 2,000 lines ran 4,000
checks at its commit: 23 ms of a commit that takes 1.5 ms without them, on top of 11 us per
line of COPY. (replica, seq) and (deployment, id) already lead with each key, so the two
single-column indexes only cost inserts. The ORM still enforces on_delete (PROTECT on the
replica, CASCADE with the deployment); lines are written only by services/logs.py.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('deployments', '0005_log_cursors_event_order'),
    ]

    operations = [
        migrations.AlterField(
            model_name='logline',
            name='deployment',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='log_lines', to='deployments.deployment'),
        ),
        migrations.AlterField(
            model_name='logline',
            name='replica',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='log_lines', to='deployments.replica'),
        ),
    ]
