-- wrk script for bench/peers.py: a new seed (or a new noise body) on every request.
--
--   PEERS_PATH='/generate?n=1&seed={seed}' PEERS_SEED_BASE=0 PEERS_SEED_STEP=1 \
--     wrk -t1 -c8 -d5s --latency -s bench/generate.lua http://127.0.0.1:8000
--   PEERS_BODIES=bodies.jsonl wrk -t1 -c8 -d5s --latency -s bench/generate.lua \
--     http://127.0.0.1:8300/v2/models/generator/infer
--
-- PEERS_PATH: GET this path with {seed} replaced by PEERS_SEED_BASE + i * PEERS_SEED_STEP on
-- the i-th request. PEERS_BODIES: POST the lines of this file (JSON bodies) in turn, as
-- application/json, to the URL's path. Neither: wrk's plain GET of the URL.

local template = os.getenv("PEERS_PATH")
local bodies_file = os.getenv("PEERS_BODIES")
local requests = {}
local counter = 0

function init(args)
  if bodies_file then
    for body in io.lines(bodies_file) do
      requests[#requests + 1] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
    end
  end
end

if bodies_file then
  request = function()
    counter = counter % #requests + 1
    return requests[counter]
  end
elseif template then
  local base = tonumber(os.getenv("PEERS_SEED_BASE") or "0")
  local step = tonumber(os.getenv("PEERS_SEED_STEP") or "1")
  request = function()
    local path = template:gsub("{seed}", string.format("%d", base + counter * step))
    counter = counter + 1
    return wrk.format("GET", path)
  end
end
