// The device list is loaded one request at a time. Asking while one runs queues a single follow-up
// (any number of gaps make one); a response is used only if it is the newest asked for (a sequence
// number: `cancel()` retires the one under way); and the events that arrive while it loads are kept
// and handed over with it, to be re-applied over its snapshot (which may predate them).

const MAX_REPLAY = 20000; // events kept while a list loads; beyond, that load is dropped for another

export class ListLoader {
  /** `fetchList()` gets the list; `use(body, events)` shows it, then re-applies `events`. */
  constructor(fetchList, use) {
    this.fetchList = fetchList;
    this.use = use;
    this.seq = 0;
    this.running = null; // the promise of the loads under way
    this.again = false; // a follow-up was asked for
    this.events = null; // [apply, event, arrival] while a load runs, else null
  }

  /** Load the list, or have it loaded again once the load under way is done. */
  load() {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      try {
        do {
          this.again = false;
          try {
            await this.loadOnce();
          } catch (err) { // a failed load with a follow-up asked for: the follow-up may fare better
            if (!this.again || err.message === "unauthorized") throw err;
          }
        } while (this.again);
      } finally {
        this.running = null;
        this.again = false;
        this.events = null;
      }
    })();
    return this.running;
  }

  async loadOnce() {
    const seq = ++this.seq;
    this.events = [];
    const body = await this.fetchList();
    if (seq !== this.seq) return; // retired meanwhile
    const events = this.events;
    this.events = null;
    if (events === null) return; // more events came than are kept: the follow-up replaces this load
    this.use(body, events);
  }

  /** Apply an event now (`apply(e, arrival)`), and keep it to re-apply if a list is loading. */
  remember(apply, e, arrival) {
    apply(e, arrival);
    if (this.events === null) return;
    this.events.push([apply, e, arrival]);
    if (this.events.length > MAX_REPLAY) {
      this.events = null;
      this.again = true;
    }
  }

  /** The load under way, if any, is not shown (the user logged out). */
  cancel() {
    this.seq++;
  }
}
