-- wrk script for benchmarks/app_bench.py: record reads and list history as
-- many users at once, each request with the token of the user it names.
--
-- wrk is closed-loop: each connection sends its next request only after the
-- answer to the last one. delay() spaces the requests of each connection so
-- that all of them together come near a fixed rate; a slow answer delays the
-- requests behind it instead of piling them up, as a constant-rate tool would.
--
-- Arguments after "--": the file of "user_id token" lines, and the delay in
-- milliseconds between two requests of one connection.

local requests = {}
local pause_ms = 0

function init(args)
   pause_ms = tonumber(args[2])
   math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
   for line in io.lines(args[1]) do
      local user_id, token = line:match("^(%d+) (%S+)$")
      local headers = {
         ["Authorization"] = "Bearer " .. token,
         ["Content-Type"] = "application/json",
      }
      local history = "/api/v1/users/" .. user_id .. "/history"
      local body = '{"article_id": ' .. math.random(1, 1000000)
         .. ', "feed_id": 7, "category": "bench", "duration_seconds": 42'
         .. ', "scroll_depth": 80}'
      table.insert(requests, wrk.format("POST", history, headers, body))
      table.insert(requests, wrk.format("GET", history .. "?limit=20", headers))
   end
end

function delay()
   -- Jitter keeps the connections from falling into step with each other.
   return pause_ms * (0.5 + math.random())
end

function request()
   return requests[math.random(#requests)]
end

function done(summary, latency, requests)
   io.write(string.format(
      '{"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, '
         .. '"p99_us": %d, "max_us": %d, "status_errors": %d, '
         .. '"socket_errors": %d}\n',
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, summary.errors.status,
      summary.errors.connect + summary.errors.read + summary.errors.write
         + summary.errors.timeout))
end
