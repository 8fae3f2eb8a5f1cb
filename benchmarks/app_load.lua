-- wrk script for benchmarks/app_bench.py: record reads and list history as
-- many users at once, at a constant rate, each request with the token of the
-- user it names.
--
-- wrk alone is closed-loop: a connection sends its next request only once the
-- last answer came, so a slow answer holds back the requests behind it and
-- their wait is never counted. This script paces it as an open-loop tool
-- instead. The run is cut into send slots at a fixed interval; a connection
-- that is free takes the next slot, waits for its time, or sends at once when
-- the slot is already past. A latency runs from the slot's time, not from the
-- moment of sending, so the time a request spent waiting for a connection
-- counts as well.
--
-- Each request carries its slot number in X-Request-ID, which the service
-- echoes, so an answer finds its slot whatever order the answers come in.
--
-- Arguments after "--": the file of "user_id token" lines, and the rate in
-- requests a second. Run it with one thread: the slots belong to that thread.

local ffi = require("ffi")

ffi.cdef([[
   struct load_timespec { long tv_sec; long tv_nsec; };
   int clock_gettime(int clock_id, struct load_timespec *now);
]])

local CLOCK_MONOTONIC = 1
local clock_reading = ffi.new("struct load_timespec")

local function now_us()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, clock_reading)
   return tonumber(clock_reading.tv_sec) * 1e6
      + tonumber(clock_reading.tv_nsec) / 1e3
end

local users = {}
local interval_us = nil
local first_slot_us = nil
local next_slot = 0

-- Slots taken by delay() and not yet sent, oldest first: wrk calls request()
-- when a delay ends, and delays end in the order of their slots.
local waiting = {}
local waiting_first = 1
local waiting_last = 0

-- Slot number -> the time its latency counts from.
local started = {}

-- Read by done() through thread:get(), so they are globals.
latencies_us = {}
sent = 0
status_errors = 0
unmatched = 0

function init(args)
   interval_us = 1e6 / tonumber(args[2])
   math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
   for line in io.lines(args[1]) do
      local user_id, token = line:match("^(%d+) (%S+)$")
      table.insert(users, { id = user_id, token = token })
   end
end

function delay()
   local now = now_us()
   first_slot_us = first_slot_us or now

   local slot = next_slot
   next_slot = next_slot + 1
   waiting_last = waiting_last + 1
   waiting[waiting_last] = slot

   local wait_ms = (first_slot_us + slot * interval_us - now) / 1000
   return math.max(0, wait_ms)
end

local function take_waiting_slot()
   if waiting_first > waiting_last then
      return nil
   end
   local slot = waiting[waiting_first]
   waiting[waiting_first] = nil
   waiting_first = waiting_first + 1
   return slot
end

local function record_read_or_list(user, slot)
   local history = "/api/v1/users/" .. user.id .. "/history"
   local headers = {
      ["Authorization"] = "Bearer " .. user.token,
      ["X-Request-ID"] = "slot-" .. slot,
   }
   if math.random() < 0.5 then
      return wrk.format("GET", history .. "?limit=20", headers)
   end
   headers["Content-Type"] = "application/json"
   local body = '{"article_id": ' .. math.random(1, 1000000)
      .. ', "feed_id": 7, "category": "bench", "duration_seconds": 42'
      .. ', "scroll_depth": 80}'
   return wrk.format("POST", history, headers, body)
end

function request()
   local slot = take_waiting_slot()
   if slot == nil then
      -- wrk calls request() once before the run to check the script; with a
      -- delay() in the script, every request of the run follows a delay().
      return record_read_or_list(users[1], "check")
   end

   -- A late request counts from its slot. A delay rounds down to whole
   -- milliseconds, so a request may also leave a little early: it then
   -- counts from when it left.
   started[slot] = math.min(first_slot_us + slot * interval_us, now_us())
   sent = sent + 1
   return record_read_or_list(users[math.random(#users)], slot)
end

function response(status, headers, body)
   local request_id = headers["x-request-id"] or headers["X-Request-ID"] or ""
   local slot = tonumber(request_id:match("^slot%-(%d+)$"))
   if slot == nil or started[slot] == nil then
      unmatched = unmatched + 1
      return
   end

   table.insert(latencies_us, now_us() - started[slot])
   started[slot] = nil
   if status >= 400 then
      status_errors = status_errors + 1
   end
end

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local function percentile(sorted, share)
   if #sorted == 0 then
      return 0
   end
   return sorted[math.max(1, math.ceil(share * #sorted))]
end

function done(summary, latency, requests)
   local thread = threads[1]
   local measured = thread:get("latencies_us")
   table.sort(measured)

   io.write(string.format(
      '{"sent": %d, "answered": %d, "duration_us": %d, "p50_us": %d, '
         .. '"p90_us": %d, "p99_us": %d, "max_us": %d, "status_errors": %d, '
         .. '"unmatched": %d, "socket_errors": %d}\n',
      thread:get("sent"), #measured, summary.duration,
      percentile(measured, 0.50), percentile(measured, 0.90),
      percentile(measured, 0.99), percentile(measured, 1.0),
      thread:get("status_errors"), thread:get("unmatched"),
      summary.errors.connect + summary.errors.read + summary.errors.write
         + summary.errors.timeout))
end
