-- wrk script for fleet.sh's Redis-command count: bill inquiries (GET /v1/bills/{account}) with
-- the partner's key, each connection waiting DELAY ms after an answer before its next request,
-- so C connections send about C × 1000 / (DELAY + latency) requests a second: a steady rate
-- well under what the gateway could take (wrk has no fixed-rate mode).
--
--   wrk -t1 -c100 -d20s -s fleet_paced.lua http://127.0.0.1:18501 -- KEY DELAY_MS
--
-- One line at the end:  E2E requests=N duration_us=N non2xx=N errors=N

local key = "bench-pass-key"
local pause = 10
local counter = 0
local headers = {}

function init(args)
  if args[1] ~= nil and args[1] ~= "" then
    key = args[1]
  end
  if args[2] ~= nil then
    pause = tonumber(args[2])
  end
  headers["x-api-key"] = key
end

function request()
  counter = counter + 1
  return wrk.format("GET", "/v1/bills/" .. tostring(100000 + counter % 100000), headers)
end

function delay()
  return pause
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  io.write(string.format("E2E requests=%d duration_us=%d non2xx=%d errors=%d\n",
    summary.requests, summary.duration, summary.errors.status, errors))
end
