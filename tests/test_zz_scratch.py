import psycopg
from tests.world import build_org
from tracefence import user_token


def st(conn, q, p=()):
    try:
        with conn.transaction():
            r = conn.execute(q, p).fetchall()
            return ("ok", r)
    except psycopg.Error as e:
        return (e.sqlstate, e.diag.message_primary)


def test_probe(db):
    org = build_org(db, workspaces=1, projects_per_workspace=2)
    p, q = org.projects
    for i in range(5):
        db.insert_trace(q.id, q.production, f"secret-{i % 2}")
    db.insert_trace(p.id, p.staging, "mine")
    dev = db.create_user("dev")
    with db.fence().request(user=org.owner) as c:
        c.execute("select iam.grant_role(%s, 'project_developer', %s)", [dev, p.id])
    app = db.app(autocommit=False)
    tok = user_token(db.token_secret, dev)
    app.execute("select iam.begin_request(%s)", [tok])
    app.execute("select set_config('tracefence.request', current_setting('tracefence.request'), false)")
    app.commit()
    print("after", st(app, "select iam.current_principal()"))
    print("after2", st(app, "select count(*) from telemetry.traces"))
    print("begin again", st(app, "select iam.begin_request(%s)", [tok]))
    app.rollback()
    # leaky
    a = db.app()
    a.execute("create temp table loot(n text)")
    a.execute("create function pg_temp.leak(n text) returns bool language plpgsql cost 0.0001 as $$ begin insert into pg_temp.loot values (n); return true; end $$")
    with a.transaction():
        a.execute("select iam.begin_request(%s)", [tok])
        print(a.execute("select name from telemetry.traces where pg_temp.leak(name)").fetchall())
    print("loot", a.execute("select * from loot").fetchall())
    db.admin().execute("analyze")
    adm = db.admin()
    print("admin stats", adm.execute("select attname, most_common_vals::text from pg_stats where schemaname='telemetry'").fetchall())
    print("app stats", a.execute("select attname, most_common_vals::text from pg_stats where schemaname='telemetry'").fetchall())
    with a.transaction():
        a.execute("select iam.begin_request(%s)", [tok])
        for r in a.execute("explain analyze select * from telemetry.traces").fetchall():
            print(r[0])
