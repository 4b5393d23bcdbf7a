-- wrk script for the end-to-end comparison: every request is a bill inquiry
-- (GET /v1/bills/{account}) with the partner's API key, rotating over ACCOUNTS account numbers
-- so no two consecutive requests of a connection ask about the same bill.
--
--   wrk -t2 -c64 -d10s -s bench.lua http://127.0.0.1:18002 -- KEY [ACCOUNTS]
--
-- With no KEY (direct to the backend) no key header is sent. At the end one line is printed:
--   E2E requests=N duration_us=N non2xx=N errors=N p50_us=N p99_us=N p999_us=N
-- (closed-loop latency, so coordinated omission applies; the fixed-rate figures come from oha).

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("id", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local key = nil
local accounts = 10000
local counter = 0

function init(args)
  if args[1] ~= nil and args[1] ~= "" then
    key = args[1]
  end
  if args[2] ~= nil then
    accounts = tonumber(args[2])
  end
  -- Threads start at different points of the account range.
  counter = (id or 0) * 7919
end

local headers = {}

function request()
  counter = counter + 1
  local path = "/v1/bills/" .. tostring(100000 + counter % accounts)
  if key then
    headers["x-api-key"] = key
  end
  return wrk.format("GET", path, headers)
end

function done(summary, latency, requests)
  local non2xx = summary.errors.status
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  io.write(string.format(
    "E2E requests=%d duration_us=%d non2xx=%d errors=%d p50_us=%d p99_us=%d p999_us=%d\n",
    summary.requests, summary.duration, non2xx, errors,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
