-- wrk script: POST real user ids, cycling through a file of them (one id a line).
--   wrk ... -s users.lua http://host:port/predict       -- <ids file> 1     {"user_id": "..."}
--   wrk ... -s users.lua http://host:port/predict_batch -- <ids file> 100   {"user_ids": [100 ids], ...}
-- With WRK_DELAY_MS set, each connection waits that long after a response before its next request (wrk has no
-- rate option): N connections then send about N / (delay + latency) requests a second. `delay` must be defined
-- when the script loads, not in init(): wrk decides whether to call it before init runs.
local requests = {}
local next_request = 0
local pause_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0")

if pause_ms > 0 then
  function delay()
    return pause_ms
  end
end

local function quoted(id)
  return '"' .. id .. '"'
end

function init(args)
  local ids = {}
  for line in io.lines(args[1]) do
    if line ~= "" then
      ids[#ids + 1] = line
    end
  end
  local per_request = tonumber(args[2] or "1")
  local headers = { ["Content-Type"] = "application/json" }
  for first = 1, #ids - per_request + 1, per_request do
    local body
    if per_request == 1 then
      body = '{"user_id":' .. quoted(ids[first]) .. "}"
    else
      local chunk = {}
      for i = first, first + per_request - 1 do
        chunk[#chunk + 1] = quoted(ids[i])
      end
      body = '{"user_ids":[' .. table.concat(chunk, ",") .. '],"include_features":false}'
    end
    requests[#requests + 1] = wrk.format("POST", nil, headers, body)
  end
end

function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end
