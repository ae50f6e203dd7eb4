//! The database path: download everywhere, maintenance on, install, `upgrade_command` once,
//! maintenance off, every web node healthy.

use super::*;

pub(super) fn database_path(ctx: &mut Ctx, plan: &Plan) -> Result<f64, RollError> {
    let all: Vec<String> = plan
        .batches
        .iter()
        .flatten()
        .chain(plan.cron.iter())
        .cloned()
        .collect();
    let first_web = web_nodes(ctx.cfg)
        .first()
        .map(|n| n.name.clone())
        .unwrap_or_else(|| ctx.cfg.nodes[0].name.clone());
    // 1. Download everywhere first: the maintenance window holds no download.
    let t = Instant::now();
    if !all.is_empty() {
        ctx.reporter.step(&format!(
            "downloading {} on {}",
            plan.target,
            all.join(", ")
        ));
        let script = ctx.apt_install(&plan.target, true);
        for (n, r) in all.clone().iter().zip(ctx.run_apt(&all, &script)) {
            let failure = match r {
                Ok(o) if o.success() => {
                    ctx.log_step(
                        &Step::Download { node: n.clone() },
                        None,
                        "ok",
                        t,
                        &plan.target,
                    );
                    continue;
                }
                Ok(o) => format!(
                    "{n}: downloading {}={} failed: {}",
                    ctx.pkg,
                    plan.target,
                    o.tail()
                ),
                Err(e) => e.to_string(),
            };
            ctx.reporter.step_done();
            let untouched = ctx.untouched();
            return Err(ctx.fail(Some(n), format!("{failure}; {untouched}")));
        }
        ctx.reporter.step_done();
    }
    if ctx.interrupted() {
        let untouched = ctx.untouched();
        return Err(ctx.interrupt(format!("stopped before the maintenance step; {untouched}")));
    }
    // 2. Maintenance on.
    let maintenance_on = Step::MaintenanceOn {
        node: first_web.clone(),
    };
    let on = substitute(&ctx.cfg.roll.maintenance_on, ctx.cfg);
    let t = Instant::now();
    let m_start = Instant::now();
    if plan.installed.get(&first_web).is_some_and(|v| v.is_some()) {
        let out = ctx.ssh.run_long(ctx.conn(&first_web), &on)?;
        if !out.success() {
            let untouched = ctx.untouched();
            return Err(ctx.fail(
                Some(&first_web),
                format!("maintenance_on failed: {}; {untouched}", out.tail()),
            ));
        }
        ctx.log_step(&maintenance_on, None, "ok", t, &on);
    } else {
        // A first install: no code on the node yet, so nothing to put in maintenance.
        ctx.log_step(&maintenance_on, None, "skipped", t, "no code installed yet");
    }
    ctx.state.upgrade_pending = true;
    ctx.save_state();
    // 3. Install everywhere, batch after batch. Web nodes leave rotation while their files are
    // swapped (the others serve the maintenance page meanwhile), unless that would leave none.
    let web_count = web_nodes(ctx.cfg).len();
    for chunk in all.chunks(plan.batch) {
        let web: Vec<Node> = ctx
            .cfg
            .nodes
            .iter()
            .filter(|n| n.role == Role::Web && chunk.contains(&n.name))
            .cloned()
            .collect();
        let drain = !web.is_empty() && web.len() < web_count;
        if drain {
            take_out_for_install(ctx, &web)?;
        }
        if let Err((n, m)) = install_nodes(ctx, chunk, &plan.target) {
            for w in &web {
                let state = if w.name == n {
                    AdminState::Maint
                } else {
                    AdminState::Ready
                };
                if drain || state == AdminState::Maint {
                    let _ = ctx.set_all(&w.name, &server_name(w), state);
                }
            }
            let resume = ctx.state.resume_command();
            return Err(ctx.fail(Some(&n), format!("{m}; the site is left in maintenance mode (the database is not upgraded yet): fix {n} and run `{resume}`")));
        }
        if drain {
            for w in &web {
                ctx.set_all(&w.name, &server_name(w), AdminState::Ready)?;
            }
        }
    }
    // 4. The database upgrade, once.
    let up = substitute(&ctx.cfg.roll.upgrade_command, ctx.cfg);
    let t = Instant::now();
    ctx.reporter
        .step(&format!("upgrading the database on {first_web}"));
    let out = ctx.ssh.run_long(ctx.conn(&first_web), &up)?;
    ctx.reporter.step_done();
    if !out.success() {
        let resume = ctx.state.resume_command();
        return Err(ctx.fail(
            Some(&first_web),
            format!(
                "upgrade_command failed ({}): {}; the site is left in maintenance mode: fix the cause and run `{resume}` (it runs the upgrade again and ends maintenance)",
                out.status(),
                out.tail()
            ),
        ));
    }
    let upgrade = Step::Upgrade {
        node: first_web.clone(),
    };
    ctx.log_step(&upgrade, None, "ok", t, &up);
    // 5. Maintenance off, then every web node healthy.
    let off = substitute(&ctx.cfg.roll.maintenance_off, ctx.cfg);
    let t = Instant::now();
    let out = ctx.ssh.run_long(ctx.conn(&first_web), &off)?;
    if !out.success() {
        return Err(ctx.fail(
            Some(&first_web),
            format!("maintenance_off failed: {}", out.tail()),
        ));
    }
    ctx.state.upgrade_pending = false;
    ctx.save_state();
    let secs = m_start.elapsed().as_secs_f64();
    ctx.log_step(
        &Step::MaintenanceOff {
            node: first_web.clone(),
        },
        None,
        "ok",
        t,
        &format!("site in maintenance for {secs:.1}s"),
    );
    for n in web_nodes(ctx.cfg).into_iter().cloned().collect::<Vec<_>>() {
        if let Err(m) = wait_healthy(ctx, &n) {
            let _ = ctx.set_all(&n.name, &server_name(&n), AdminState::Maint);
            return Err(ctx.fail(
                Some(&n.name),
                format!("{m}; {} is out of rotation (maint)", n.name),
            ));
        }
    }
    Ok(secs)
}
