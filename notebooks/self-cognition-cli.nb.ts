// Source of notebooks/self-cognition-cli.ipynb in the "percent" format (see self-cognition-sft.nb.ts):
// the seed's command-line path — `tsft sft`, `tsft infer`, `tsft deploy`, `tsft export`, `tsft web-ui` —
// each run from a cell as a child process whose output streams into the cell.

// %% [markdown]
// # 10分钟改变大模型自我认知，定制“专属自己”的聊天机器人（命令行版）
//
// 我们使用 tsft 的命令行 `tsft`（与 ms-swift 的 `swift` 命令同名参数、同样的默认值）对 Qwen 进行自我认知微调：
// 训练后模型会说自己是**精衡（Jingheng）**，由**叶博韬（YE SEVERIN）**训练。
//
// - 模型：默认是离线的 `tiny`（Qwen3 架构 + 真实的 Qwen 分词器，随机初始化，2 核 CPU 上几分钟就能训练完）；
//   在 GPU 机器上只改一行即可换成 `Qwen/Qwen3-4B-Thinking-2507`（全参数微调）或 `Qwen/Qwen2.5-3B-Instruct`（LoRA，原始教程）
//
// - 自我认知数据集：https://modelscope.cn/datasets/swift/self-cognition （离线默认使用项目自带、格式相同的 `tsft/self-cognition`）
//
// 使用命令行界面：帮助开发者更快的将训练和推理跑起来。每条命令也可以直接在终端里运行（`npx tsft ...`），
// 这里在 notebook 的单元格中以子进程运行，输出实时显示在单元格下方。使用 TypeScript API 的版本见 `self-cognition-sft.ipynb`。

// %% [markdown]
// ## 安装 tsft
//
// 在仓库根目录执行一次：`npm ci && npm run notebooks:install`。`tsft` 命令列出所有子命令和参数：

// %%
// tsft: 运行 `tsft <子命令> ...` 并把输出实时显示在单元格中（相当于原 notebook 的 `!swift ...`）；tsftOutput 还返回输出的文本
// tsftServer: 启动 `tsft deploy` / `tsft web-ui` 这类一直运行的服务，返回地址和停止函数
// logged: 从命令输出中取出 `key: value`（例如 last_model_checkpoint）
import * as fs from 'fs';
import * as path from 'path';
import * as tslab from 'tslab';
import { tsft, tsftOutput, tsftServer, freePort, logged } from './notebooks/shell';

await tsft(['--help']);

// %% [markdown]
// 设置参数（只改第一行即可切换模型，其它取值都由它推出）：

// %%
// ========== 模型配置 ==========
const model = 'tiny';  // 'tiny' | 'Qwen/Qwen3-4B-Thinking-2507' | 'Qwen/Qwen2.5-3B-Instruct' | 本地模型目录
const tiny = model === 'tiny';
// 原始教程用 LoRA 微调 Qwen2.5-3B-Instruct；原 notebook 对 Qwen3-4B-Thinking 做全参数微调；tiny 从随机初始化学起，全参数
const train_type = /Qwen2\.5/i.test(model) ? 'lora' : 'full';
// 输出目录：每次 `tsft sft` 在其中新建 v<N>-<日期-时间> 子目录（与 swift sft 相同）
const output_dir = 'output/notebook-cli';

// ========== 数据集配置 ==========
// #后的数字表示使用该数据集的前N条数据；tiny 使用项目自带的离线数据集
const dataset = tiny
  ? ['tsft/self-cognition', 'tsft/general-zh#5', 'tsft/general-en#5']
  : ['AI-ModelScope/alpaca-gpt4-data-zh#500', 'AI-ModelScope/alpaca-gpt4-data-en#500', 'swift/self-cognition#500'];

// ========== 自我认知数据集个性化配置 ==========
const model_name = ['精衡', 'Jingheng'];       // 模型的中文名和英文名（替换 {{NAME}}）
const model_author = ['叶博韬', 'YE SEVERIN'];  // 模型作者的中文名和英文名（替换 {{AUTHOR}}）

// ========== 训练参数（swift sft 的参数名）==========
const sft_args = [
  '--model', model,
  '--train_type', train_type,
  ...(train_type === 'lora' ? ['--lora_rank', '8', '--lora_alpha', '32', '--target_modules', 'all-linear'] : []),
  '--dataset', ...dataset,
  '--torch_dtype', tiny ? 'float32' : 'bfloat16',
  '--num_train_epochs', tiny ? '12' : '1',
  '--per_device_train_batch_size', tiny ? '8' : '1',
  '--per_device_eval_batch_size', tiny ? '8' : '1',
  '--learning_rate', tiny ? '5e-3' : train_type === 'lora' ? '1e-4' : '5e-6',
  '--gradient_accumulation_steps', tiny ? '1' : train_type === 'lora' ? '16' : '32',
  '--gradient_checkpointing', tiny ? 'false' : 'true',
  '--eval_steps', '50',
  '--save_steps', '50',
  '--save_total_limit', '2',
  '--logging_steps', '5',
  '--max_length', '2048',
  '--output_dir', output_dir,
  '--system', 'You are a helpful assistant.',
  '--warmup_ratio', '0.05',
  '--split_dataset_ratio', '0.01',
  '--dataloader_num_workers', '4',
  '--dataset_num_proc', '4',
  '--model_name', ...model_name,
  '--model_author', ...model_author,
];
// 推理时生成的最大 token 数（tiny 的回答很短）
const max_new_tokens = tiny ? '128' : '2048';
const query_list = ['who are you?', '晚上睡不着觉怎么办？', '你是谁训练的？'];

// %% [markdown]
// ## 训练
//
// `tsft sft`（对应 `swift sft`）：加载模型和数据集、编码、训练，保存检查点，并在 `images/` 中画出 loss 曲线。

// %%
const sft_output = await tsftOutput(['sft', ...sft_args]);
// 最后保存的检查点，格式为 output/notebook-cli/vx-xxx/checkpoint-xxx
const last_model_checkpoint = logged(sft_output, 'last_model_checkpoint');

// %% [markdown]
// 可视化训练的loss。其中浅黄色线条代表真实loss值，黄色线条代表经过0.9平滑系数平滑后的loss值（`tsft sft` 训练结束时已画好）：

// %%
const images_dir = path.join(path.dirname(last_model_checkpoint), 'images');
console.log(`images_dir: ${images_dir}`);
tslab.display.png(fs.readFileSync(path.join(images_dir, 'train_loss.png')));

// %% [markdown]
// ## 推理
//
// `tsft infer`（对应 `swift infer`）：流式输出，temperature 0。全参数微调直接加载检查点；LoRA 加载基础模型和适配器
// （`--adapters`，基础模型从检查点的 args.json 读出）。不带 `--query` 时是交互式聊天（在终端里运行）。

// %%
// 全参数微调：--model 检查点；LoRA：--adapters 检查点
const model_args = train_type === 'full' ? ['--model', last_model_checkpoint] : ['--adapters', last_model_checkpoint];
await tsft([
  'infer', ...model_args,
  '--stream', 'true',
  '--temperature', '0',
  '--max_new_tokens', max_new_tokens,
  ...query_list.flatMap((q) => ['--query', q]),
]);

// %% [markdown]
// ## 部署
//
// `tsft deploy`（对应 `swift deploy`）：OpenAI 兼容的 HTTP 服务（`/v1/chat/completions`、`/v1/completions`、`/v1/models`、`/health`）。
// 这里启动服务，用 `fetch` 发一次请求，然后停止服务。任何 OpenAI 客户端都可以连接它（`baseURL: <地址>/v1`）。

// %%
const server = await tsftServer(['deploy', ...model_args, '--port', String(await freePort(8000))]);
async function ask(url: string, content: string) {
  // 服务的模型名（默认是检查点目录名），与 OpenAI 的 GET /v1/models 相同
  const models = await (await fetch(`${url}/v1/models`)).json() as { data: { id: string }[] };
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: models.data[0].id, messages: [{ role: 'user', content: content }], temperature: 0, max_tokens: Number(max_new_tokens) }),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(`POST /v1/chat/completions → ${res.status}: ${JSON.stringify(body)}`);
  return body as { choices: { message: { content: string } }[]; usage: unknown };
}
const completion = await ask(server.url, '你是谁？');
console.log(`POST ${server.url}/v1/chat/completions\nquery: 你是谁？\nresponse: ${completion.choices[0].message.content}`);
console.log(`usage: ${JSON.stringify(completion.usage)}`);
await server.stop();
console.log('deploy 已停止');

// %% [markdown]
// ## 导出
//
// `tsft export --adapters <检查点> --merge_lora true`（对应 `swift export`）：把 LoRA 适配器合并进基础模型，写出
// `<检查点>-merged`，一个 transformers / vLLM 可直接加载的完整模型。
//
// 全参数微调的检查点本身就是完整模型，不需要合并；为了演示，tiny 时在它上面再做几步 LoRA 微调，然后合并。

// %%
async function lora_checkpoint(): Promise<string> {
  if (train_type === 'lora') return last_model_checkpoint;
  const out = await tsftOutput([
    'sft', '--model', last_model_checkpoint, '--train_type', 'lora', '--dataset', 'tsft/self-cognition',
    '--model_name', ...model_name, '--model_author', ...model_author,
    '--max_steps', '5', '--per_device_train_batch_size', '8', '--learning_rate', '1e-3', '--gradient_checkpointing', 'false',
    '--logging_steps', '1', '--report_to', 'none', '--output_dir', `${output_dir}-lora`,
  ]);
  return logged(out, 'last_model_checkpoint');
}
const adapters = await lora_checkpoint();
await tsft(['export', '--adapters', adapters, '--merge_lora', 'true']);
const merged = `${adapters}-merged`;
console.log(fs.readdirSync(merged).join('\n'));

// 合并后的模型可以像普通模型一样推理
await tsft(['infer', '--model', merged, '--temperature', '0', '--max_new_tokens', max_new_tokens, '--query', '你是谁？']);

// %% [markdown]
// ## Web-UI
//
// `tsft web-ui`（对应 `swift web-ui`）：一个支持流式输出、系统提示、温度和最大长度设置的聊天页面。

// %%
const webui = await tsftServer([
  'web-ui', ...model_args,
  '--temperature', '0',
  '--infer_backend', 'pt',
  '--max_new_tokens', '2048',
  '--port', String(await freePort(7860)),
]);
console.log(`Web-UI: ${webui.url} （在浏览器中打开即可聊天）`);
// 检查页面能打开，然后停止，让 notebook 能运行结束；想一直使用时，在终端运行：
//   npx tsft web-ui --model <检查点路径>
console.log(`GET / → ${(await fetch(webui.url)).status}`);
await webui.stop();
console.log('Web-UI 已停止');
