"""What the operator sees: tables, progress, errors (console) and a rollout as it happens (rollout).

Shared by the tasks and the rehearsals; it renders results, it never acts on hosts."""
