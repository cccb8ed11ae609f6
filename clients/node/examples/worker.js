// Example worker: minimizes the Branin function on a bbo server.
//   node clients/node/examples/worker.js 127.0.0.1:50051 [study-name] [n-trials]
// Prints one JSON line with the best trial at the end.
'use strict';

const { Client } = require('../src');

function branin({ x1, x2 }) {
  const a = 1, b = 5.1 / (4 * Math.PI ** 2), c = 5 / Math.PI, r = 6, s = 10, t = 1 / (8 * Math.PI);
  return a * (x2 - b * x1 ** 2 + c * x1 - r) ** 2 + s * (1 - t) * Math.cos(x1) + s;
}

async function main() {
  const [address = '127.0.0.1:50051', name = 'node-branin', n = '12'] = process.argv.slice(2);
  const client = new Client(address);
  const study = await client.createStudy(name, {
    parameters: [
      { name: 'x1', float: { low: -5, high: 10 } },
      { name: 'x2', float: { low: 0, high: 15 } },
    ],
    objectives: [{ name: 'branin', goal: 'GOAL_MINIMIZE' }],
    description: 'Branin test function, minimized (example Node.js worker).',
  });
  const best = await study.optimize(async (p) => ({ branin: branin(p) }), Number(n), 'node-example');
  console.log(JSON.stringify({ study: study.name, trials: (await study.trials()).length, best: best.trial }));
  client.close();
}

main().catch((e) => {
  console.error(`error: ${e.codeName || ''} ${e.message}`);
  process.exit(1);
});
