-- wrk script: count responses per X-Served-By value (which lab backend
-- answered). Each wrk thread has its own Lua state, so every thread counts
-- in its own table and done() adds them up from the thread handles.
--   wrk -t2 -c30 -d10s -s lab/served-by.lua http://198.18.1.1/
-- Prints one line per backend: "served-by <name> <count>".

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   served = {}
end

function response(status, headers, body)
   -- hyper sends header names in lower case; accept either spelling.
   local name = headers["x-served-by"] or headers["X-Served-By"] or "(none)"
   served[name] = (served[name] or 0) + 1
end

function done(summary, latency, requests)
   local total = {}
   for _, thread in ipairs(threads) do
      for name, count in pairs(thread:get("served")) do
         total[name] = (total[name] or 0) + count
      end
   end
   local names = {}
   for name in pairs(total) do
      table.insert(names, name)
   end
   table.sort(names)
   for _, name in ipairs(names) do
      io.write(string.format("served-by %s %d\n", name, total[name]))
   end
end
