// The seed article's Counter and worker (HTTP part), for workerd: the baseline of bench_edge.py.
export class Counter {
  constructor(state) {
    this.state = state;
    this.value = 0;
    this.state.blockConcurrencyWhile(async () => {
      this.value = (await this.state.storage.get("value")) || 0;
    });
  }
  async fetch(request) {
    const url = new URL(request.url);
    const last = url.pathname.split("/").pop();
    if (last === "increment") {
      this.value++;
      await this.state.storage.put("value", this.value);
      return new Response(JSON.stringify({ value: this.value }));
    }
    if (last === "get") return new Response(JSON.stringify({ value: this.value }));
    return new Response("Not found", { status: 404 });
  }
}

export default {
  async fetch(request, env) {
    const counterId = new URL(request.url).pathname.split("/")[2];
    if (!counterId) return new Response("Counter ID required", { status: 400 });
    return env.COUNTER.get(env.COUNTER.idFromName(counterId)).fetch(request);
  },
};
