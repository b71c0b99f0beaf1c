// The offline default (`npm start`): the most complete pipeline tsft has today, on the tiny default
// model with no network. Loads `tiny` (created on first use), prints what the seed prints about the
// model, and streams greedy answers to the seed's three queries through the chat template and the KV
// cache. Fine-tuning inside this job (the seed's training cells) arrives with the notebook issue; until
// then the model is the seeded random init and its answers are noise — said plainly below.

import { getModelTokenizer } from './model/loader';
import { getTemplate, type TemplateName } from './data/template';
import { streamChat } from './infer/stream';
import { getModelParameterInfo } from './utils/params';
import { getLogger } from './utils/logger';
import { seedEverything } from './utils/seed';
import { shutdownDevice } from './backend/device';

const QUERIES = ['who are you?', '晚上睡不着觉怎么办？', '你是谁训练的？'];

async function main(): Promise<void> {
  const logger = getLogger();
  seedEverything(42);
  const t0 = Date.now();
  const { model, tokenizer } = await getModelTokenizer('tiny');
  logger.info(`model_info: ${JSON.stringify({ ...model.modelInfo, config: undefined })}`);
  logger.info(`model_parameter_info: ${getModelParameterInfo(model)}`);
  const template = getTemplate(model.modelMeta.template as TemplateName, tokenizer, { defaultSystem: 'You are a helpful assistant.' });
  template.setMode('pt');
  logger.warning('the tiny model is untrained (seeded random weights): its answers below are noise; fine-tune it with `npx tsft sft --model tiny --dataset tsft/self-cognition ...`');
  for (const query of QUERIES) {
    process.stdout.write(`query: ${query}\nresponse: `);
    let finish = '';
    for await (const piece of streamChat(model, template, [{ role: 'user', content: query }], { maxNewTokens: 24 })) {
      process.stdout.write(piece.text);
      finish = piece.finishReason ?? finish;
    }
    process.stdout.write(`\n[finish_reason: ${finish}]\n${'-'.repeat(50)}\n`);
  }
  logger.info(`done in ${((Date.now() - t0) / 1000).toFixed(1)}s; model files: ${model.modelInfo.modelDir}`);
  model.dispose();
  await shutdownDevice();
}

main().catch((e) => {
  console.error(e instanceof Error ? `${e.name}: ${e.message}` : e);
  process.exit(1);
});
