-- wrk script for scripts/bench: every request polls a random session.
-- The ids come from the file named by $BENCH_IDS (one per line). The same script runs against
-- nginx (which ignores the path), so both servers see the same requests.
local reqs = {}

function init(args)
  local path = os.getenv("BENCH_IDS")
  if not path then error("BENCH_IDS is not set") end
  local f = assert(io.open(path, "r"))
  for line in f:lines() do
    if #line > 0 then
      reqs[#reqs + 1] = wrk.format("GET", "/mud?id=" .. line)
    end
  end
  f:close()
  if #reqs == 0 then error("no ids in " .. path) end
  math.randomseed(os.time() + (tonumber(tostring(reqs):match("0x(%x+)"), 16) or 0) % 100000)
end

function request()
  return reqs[math.random(#reqs)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d bytes=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
