// Source of notebooks/self-cognition-sft.ipynb in the "percent" format (jupytext's): `// %%` starts a code
// cell, `// %% [markdown]` a markdown cell whose lines are `// ` comments. Edit here, then
// `npm run notebooks` rewrites the .ipynb (tests/notebooks.test.ts checks that it is up to date).
// Cells run on the tsft kernel (tslab started at the repository root): imports are relative to the root.
// tslab pitfall: a shorthand property naming a variable of an earlier cell (`{ model }`) throws
// "ReferenceError: model is not defined" — write `{ model: model }`.

// %% [markdown]
// # 10分钟改变大模型自我认知，定制“专属自己”的聊天机器人（TypeScript 版）
//
// 我们使用 tsft（用 TypeScript 和 tfjs 重写的 ms-swift）对 Qwen 进行自我认知微调：训练后模型会说自己是**精衡（Jingheng）**，由**叶博韬（YE SEVERIN）**训练。
//
// - 模型：默认是离线的 `tiny`（Qwen3 架构 + 真实的 Qwen 分词器，随机初始化的小模型，2 核 CPU 上几分钟就能训练完）；
//   在 GPU 机器上只改一行即可换成 https://modelscope.cn/models/Qwen/Qwen3-4B-Thinking-2507 （全参数微调，原 notebook）
//   或 https://modelscope.cn/models/Qwen/Qwen2.5-3B-Instruct （LoRA，原始教程）
//
// - 自我认知数据集：https://modelscope.cn/datasets/swift/self-cognition （离线默认使用项目自带、格式相同的 `tsft/self-cognition`）
//
// - 训练框架：tsft（本仓库，ms-swift 的 TypeScript 复刻：https://github.com/modelscope/ms-swift.git ）
//
// - 实验环境：离线默认只需 CPU；真实模型需要 GPU（tsft 通过 WebGPU 使用任意 GPU，不绑定 CUDA 版本）
//
// 这里给出了两种训练和推理的方式，分别是：使用命令行界面和使用 TypeScript。
//
// - 使用命令行界面：帮助开发者更快的将训练和推理跑起来（见 `self-cognition-cli.ipynb`）。
//
// - 使用 TypeScript：帮助开发者了解训练和推理的一些细节，这对定制训练过程有很大帮助（本 notebook）。
//
// 准备好了吗？让我们开始这段旅程叭……

// %% [markdown]
// ## 安装 tsft
//
// 在仓库根目录执行一次：安装依赖，并注册本 notebook 使用的 Jupyter 内核 “TypeScript (tsft)”。
//
// ```bash
// npm ci && npm run notebooks:install
// ```

// %%
// 检查安装：tslab（本内核）、它编译 TypeScript 用的版本，以及 Node.js
import * as tslab from 'tslab';
console.log(tslab.versions);

// %% [markdown]
// ## 使用 TypeScript
//
//
// #### 训练
// 导入一些库：

// %%
// 导入 Node.js 的路径和文件库
import * as path from 'path';
import * as fs from 'fs';
// 选择设备（对应原 notebook 的 CUDA_VISIBLE_DEVICES）：webgpu（GPU）/ wasm（CPU）/ auto（有 GPU 用 GPU，否则用 CPU）
process.env.TSFT_DEVICE ??= 'auto';

// 从 tsft 导入模型和分词器加载函数（名字与 swift.llm 一一对应）
// getModelTokenizer: 获取模型和分词器
// loadDataset: 加载数据集
// getTemplate: 获取对话模板
// EncodePreprocessor: 文本编码预处理器
// prepareLora: 给模型加上 LoRA 适配器（swift.tuners 的 Swift.prepare_model + LoraConfig）
//
// 工具函数（swift.utils）
// getLogger: 获取日志记录器
// getModelParameterInfo: 获取模型参数信息
// plotImages: 绘制图像
// seedEverything: 设置随机种子确保实验可重复
//
// 训练器和训练参数（swift.trainers）
// Seq2SeqTrainer: 序列到序列训练器
// Seq2SeqTrainingArguments: 序列到序列训练参数配置
//
// LiveLossChart: 训练时在 notebook 中实时刷新的 loss 曲线
import {
  getModelTokenizer, loadDataset, getTemplate, EncodePreprocessor, prepareLora,
  getLogger, getModelParameterInfo, plotImages, seedEverything,
  Seq2SeqTrainer, Seq2SeqTrainingArguments, LiveLossChart, type TemplateName,
} from './src/index';

// 获取日志记录器实例
const logger = getLogger();
// 设置全局随机种子为42，确保实验结果可重复
seedEverything(42);

// %% [markdown]
// 设置训练的超参数：
//
// 默认离线运行 `tiny` 模型。要复现原 notebook，只需修改第一行 `model_id_or_path`：
// `'Qwen/Qwen3-4B-Thinking-2507'`（全参数微调，原 notebook 的超参数）或 `'Qwen/Qwen2.5-3B-Instruct'`（LoRA，原始教程的超参数）。
// 与模型有关的其它取值都由这一行推出。

// %%
// ========== 模型配置 ==========
// 指定要使用的模型路径或模型ID（只改这一行即可切换模型）
const model_id_or_path = 'tiny';  // 'tiny' | 'Qwen/Qwen3-4B-Thinking-2507' | 'Qwen/Qwen2.5-3B-Instruct' | 本地模型目录
// tiny: 随机初始化的小模型，离线、CPU 上几分钟训练完；需要更大的学习率、更多轮数和更短的回答
const tiny = model_id_or_path === 'tiny';
// 原始教程用 LoRA 微调 Qwen2.5-3B-Instruct；原 notebook 对 Qwen3-4B-Thinking 做全参数微调
const train_type: 'lora' | 'full' = /Qwen2\.5/i.test(model_id_or_path) ? 'lora' : 'full';
// 设置系统提示语，定义AI助手的基本行为
const system = 'You are a helpful assistant.';
// 设置训练输出目录，保存模型检查点和日志（git 忽略 output/）
let output_dir = 'output/notebook-sft';

// ========== 数据集配置 ==========
// 定义训练数据集列表，#后的数字表示使用该数据集的前N条数据
// AI-ModelScope/alpaca-gpt4-data-zh: 中文指令数据集，使用前500条
// AI-ModelScope/alpaca-gpt4-data-en: 英文指令数据集，使用前500条
// swift/self-cognition: 自我认知数据集，使用前500条
// tiny（离线）: 项目自带的数据集 —— 全部 90 条自我认知数据，加上少量通用指令数据
const dataset = tiny
  ? ['tsft/self-cognition', 'tsft/general-zh#5', 'tsft/general-en#5']
  : ['AI-ModelScope/alpaca-gpt4-data-zh#500', 'AI-ModelScope/alpaca-gpt4-data-en#500', 'swift/self-cognition#500'];  // dataset_id or dataset_path
// 数据集随机种子，确保数据划分的可重复性
const data_seed = 42;
// 输入序列的最大长度（tokens数量）
const max_length = 2048;
// 验证集划分比例，0.01表示1%的数据用作验证集
const split_dataset_ratio = 0.01;  // 切分验证集
// 数据预处理时使用的线程数，加快数据处理速度（只会用到空闲的 CPU 核）
const num_proc = 4;  // 预处理的线程数

// ========== 自我认知数据集个性化配置 ==========
// 替换自我认知数据集中的填充符：{{NAME}}, {{AUTHOR}}
// 模型的中文名和英文名，用于替换数据集中的{{NAME}}占位符
const model_name = ['精衡', 'Jingheng'];  // 模型的中文名和英文名
// 模型作者的中文名和英文名，用于替换数据集中的{{AUTHOR}}占位符
const model_author = ['叶博韬', 'YE SEVERIN'];  // 模型作者的中文名和英文名

// ========== 训练超参数配置 ==========
// 全参数微调将训练模型的所有参数，需要更大的显存和更长的训练时间，因此学习率和批次大小更小；
// LoRA 只训练适配器（原始教程：lr 1e-4，梯度累积 16）
const training_args = new Seq2SeqTrainingArguments({
  // 模型检查点和日志的输出目录
  output_dir: output_dir,
  // 学习率：全参数微调 5e-6，LoRA 1e-4；tiny 从随机初始化开始，需要大得多的学习率
  learning_rate: tiny ? 5e-3 : train_type === 'lora' ? 1e-4 : 5e-6,
  // 每个设备上的训练批次大小，全参数微调需要更小的批次
  per_device_train_batch_size: tiny ? 8 : 1,
  // 每个设备上的验证批次大小
  per_device_eval_batch_size: tiny ? 8 : 1,
  // 启用梯度检查点，节省显存但增加计算时间（tiny 不需要）
  gradient_checkpointing: !tiny,
  // 权重衰减系数，防止过拟合的正则化技术
  weight_decay: 0.1,
  // 学习率调度器类型，cosine表示余弦退火调度
  lr_scheduler_type: 'cosine',
  // 预热比例，训练初期逐渐增加学习率的步数占总步数的比例
  warmup_ratio: 0.05,
  // 日志记录工具，tensorboard用于可视化训练过程
  report_to: ['tensorboard'],
  // 是否在第一步就开始记录日志
  logging_first_step: true,
  // 模型保存策略，'steps'表示按步数保存
  save_strategy: 'steps',
  // 每隔50步保存一次模型检查点
  save_steps: 50,
  // 模型评估策略，'steps'表示按步数评估
  eval_strategy: 'steps',
  // 每隔50步进行一次模型评估
  eval_steps: 50,
  // 梯度累积步数：全参数微调 32，LoRA 16，tiny 不累积
  gradient_accumulation_steps: tiny ? 1 : train_type === 'lora' ? 16 : 32,
  // 训练轮数：真实模型 1 轮；tiny 从零学起，需要多轮
  num_train_epochs: tiny ? 12 : 1,
  // 选择最佳模型的评估指标，'loss'表示以损失函数为准
  metric_for_best_model: 'loss',
  // 最多保存的检查点数量，超过后删除最旧的
  save_total_limit: 2,
  // 每隔5步记录一次训练日志
  logging_steps: 5,
  // 数据加载器使用的工作进程数
  dataloader_num_workers: 1,
  // 数据相关的随机种子
  data_seed: data_seed,
  // 混合精度（教程：bf16）。WGSL 没有 bf16：在 webgpu 上 tsft 以 f16 混合精度训练（f16 矩阵乘、f32 主权重、动态 loss scaling，会提示一次）；cpu/wasm 上以 float32 训练；保存为 float32
  bf16: !tiny,
  // 设置最大梯度范数，防止梯度爆炸
  max_grad_norm: 1.0,
  // 禁用FP16（因为我们使用BF16）
  fp16: false,
});

// 将输出目录转换为绝对路径
output_dir = path.resolve(output_dir);
// 本 notebook 的输出目录：重新运行时先清空上一次的结果
fs.rmSync(output_dir, { recursive: true, force: true });
// 记录输出目录的绝对路径
logger.info(`output_dir: ${output_dir}`);

// %% [markdown]
// 获取模型和对话template，进行全参数微调（Qwen2.5-3B-Instruct 时为 LoRA 微调）：

// %%
// ========== 模型和分词器加载 ==========
// 加载模型和分词器；模型类型（qwen2_5 / qwen3 / qwen3_thinking）从 config.json 和模型名推断，
// 也可以像原 notebook 一样显式指定：getModelTokenizer(model_id_or_path, { modelType: 'qwen3_thinking' })
const { model, tokenizer } = await getModelTokenizer(model_id_or_path);
// 打印模型的基本信息（架构、参数量等）
logger.info(`model_info: ${JSON.stringify({ ...model.modelInfo, config: undefined })}`);

// ========== 对话模板配置 ==========
// 获取模型对应的对话模板，用于格式化输入输出
// model.modelMeta.template: 模型元数据中定义的模板类型
// defaultSystem: 设置默认的系统提示语
// maxLength: 限制输入序列的最大长度
const template = getTemplate(model.modelMeta.template as TemplateName, tokenizer, { defaultSystem: system, maxLength: max_length });
// 将模板设置为训练模式，这会影响模板的行为（如是否包含特殊token）
template.setMode('train');

// ========== LoRA（原始教程）==========
// 全参数微调会训练模型的所有权重；LoRA 只训练加在所有线性层（lm_head 除外）上的低秩适配器
if (train_type === 'lora') {
  prepareLora(model, { r: 8, lora_alpha: 32, lora_dropout: 0.05, target_modules: 'all-linear', base_model_name_or_path: model_id_or_path });
}

// ========== 训练前设置 ==========
// 梯度检查点、混合精度已在 training_args 中设置
model.train();  // 确保模型处于训练模式

// ========== 模型信息输出 ==========
// 打印模型结构
logger.info(`model: ${model.constructor.name}(layers=${model.config.numLayers}, hidden_size=${model.config.hiddenSize}, heads=${model.config.numHeads}/${model.config.numKvHeads}, vocab_size=${model.config.vocabSize})`);
// 获取并打印模型参数统计信息（总参数量、可训练参数量等）
const model_parameter_info = getModelParameterInfo(model);
logger.info(`model_parameter_info: ${model_parameter_info}`);

// %% [markdown]
// 下载并载入数据集，并切分成训练集和验证集，
//
// 然后将文本编码成tokens：

// %%
// ========== 数据集加载和划分 ==========
// 加载指定的数据集并自动划分为训练集和验证集
// dataset: 数据集列表，包含中文、英文指令数据和自我认知数据
// splitDatasetRatio: 验证集比例（0.01 = 1%）
// numProc: 并行处理线程数，加快数据加载速度
// modelName/modelAuthor: 用于替换自我认知数据集中的{{NAME}}和{{AUTHOR}}占位符
// seed: 随机种子，确保数据划分的可重复性
let [train_dataset, val_dataset] = await loadDataset(dataset, {
  splitDatasetRatio: split_dataset_ratio, numProc: num_proc,
  modelName: model_name, modelAuthor: model_author, seed: data_seed,
});

// ========== 数据集信息输出 ==========
// 打印训练集的基本信息（数据条数、格式等）
logger.info(`train_dataset: ${train_dataset}`);
// 打印验证集的基本信息
logger.info(`val_dataset: ${val_dataset}`);
// 打印训练集第一条原始数据样本，查看数据格式和内容
logger.info(`train_dataset[0]: ${JSON.stringify(train_dataset[0])}`);

// ========== 数据编码预处理 ==========
// 创建编码预处理器，将文本转换为模型可理解的token序列
// template: 使用之前配置的对话模板来格式化数据
// 对训练集进行编码处理：文本 -> token IDs
const train_encoded = await EncodePreprocessor(template)(train_dataset, { numProc: num_proc });
// 对验证集进行编码处理：文本 -> token IDs
const val_encoded = await EncodePreprocessor(template)(val_dataset, { numProc: num_proc });
// 打印编码后的训练集第一条数据，查看token化后的格式
logger.info(`encoded_train_dataset[0]: ${JSON.stringify(train_encoded[0])}`);

// ========== 样本展示 ==========
// 使用模板的打印功能展示一条完整的训练样本
// 这会显示格式化后的输入输出对，包括系统提示、用户输入、模型回答等
template.printInputs(train_encoded[0]);

// %% [markdown]
// 初始化trainer并开始训练（下方的 loss 曲线在训练过程中实时刷新）：

// %%
// ========== 训练器初始化 ==========
// 实时 loss 曲线：训练器每记录一次日志（logging_steps）就重画一次
const chart = new LiveLossChart(tslab.newDisplay());

// 创建序列到序列训练器对象，配置所有训练相关组件
const trainer = new Seq2SeqTrainer({
  model: model,                            // 要训练的模型
  args: training_args,                     // 训练参数配置（学习率、批次大小、保存策略等）
  dataCollator: (rows) => template.dataCollator(rows),  // 数据整理器，用于将批次数据转换为模型输入格式
  trainDataset: train_encoded,             // 训练数据集（已编码为token序列）
  evalDataset: val_encoded,                // 验证数据集（用于评估模型性能）
  template: template,                      // 对话模板（用于格式化输入输出）
  callbacks: [{ onLog: (logs) => chart.onLog(logs) }],  // 每次记录日志时回调：刷新曲线
});

// ========== 开始训练 ==========
// 启动训练过程，这将执行以下步骤：
// 1. 前向传播：计算模型输出和损失
// 2. 反向传播：计算梯度
// 3. 参数更新：使用优化器更新模型权重
// 4. 定期保存检查点和记录日志
// 5. 定期在验证集上评估模型性能
await trainer.train();
await chart.flush();

// ========== 训练完成后处理 ==========
// 获取最后保存的模型检查点路径
// trainer.state.last_model_checkpoint 包含了训练过程中最后一次保存的模型路径
const last_model_checkpoint = trainer.state.last_model_checkpoint!;
// 记录最终模型检查点的位置，用于后续推理
logger.info(`last_model_checkpoint: ${last_model_checkpoint}`);

// %% [markdown]
// 可视化训练的loss。其中浅黄色线条代表真实loss值，黄色线条代表经过0.9平滑系数平滑后的loss值。
//
// 你也可以使用tensorboard进行实时可视化，在命令行输入`tensorboard --logdir 'output/notebook-sft/runs'`。

// %%
const images_dir = path.join(output_dir, 'images');
logger.info(`images_dir: ${images_dir}`);
await plotImages(images_dir, training_args.logging_dir!, ['train/loss'], 0.9);  // 保存图片

// 展示图片
tslab.display.png(fs.readFileSync(path.join(images_dir, 'train_loss.png')));

// %% [markdown]
// #### 微调后推理
//
// 导入一些库：

// %%
// ========== 推理相关库导入 ==========
// 从 tsft 导入推理相关的核心类和函数
import {
  type InferEngine,  // 推理引擎接口，定义推理接口
  InferRequest,      // 推理请求对象，封装用户输入和配置
  PtEngine,          // 推理引擎，用于加载和运行模型（tfjs：GPU 上走 WebGPU，CPU 上走 wasm）
  RequestConfig,     // 请求配置对象，设置生成参数（温度、最大长度等）
  getTemplate,       // 获取对话模板函数，用于格式化输入输出
} from './src/index';

// 释放训练用的模型（推理引擎会从检查点重新加载）
model.dispose();

// %% [markdown]
// 设置推理的超参数：

// %%
// ========== 微调后模型路径配置 ==========
// 训练完成后保存的模型检查点路径，格式为 output/notebook-sft/checkpoint-xxx（这里就是上面训练得到的）；
// 单独运行推理部分时，把它改成实际的检查点路径
const checkpoint = last_model_checkpoint;

// ========== 推理模型配置 ==========
// 全参数微调保存的是完整的模型权重：直接加载微调后的完整模型；LoRA：基础模型 + 适配器
const infer_model = train_type === 'full' ? checkpoint : model_id_or_path;
const adapters = train_type === 'lora' ? [checkpoint] : [];
// 设置系统提示语，定义AI助手的行为特征
const infer_system = 'You are a helpful assistant.';
// 指定推理后端类型，'pt'表示 tsft 自己的 tfjs 引擎
const infer_backend = 'pt';

// ========== 文本生成参数配置 ==========
// 设置生成文本的最大新token数量（不包括输入部分）；tiny 的回答很短
const max_new_tokens = tiny ? 128 : 10000;
// 设置生成温度，控制文本生成的随机性
// temperature=0: 确定性生成，总是选择概率最高的token
// temperature>0: 随机性生成，值越大越随机
const temperature = 0;
// 是否启用流式输出，true表示逐token生成并实时返回
// 流式输出可以提供更好的用户体验，类似ChatGPT的打字效果
const stream = true;

// %% [markdown]
// 获取推理引擎，载入微调后的模型：

// %%
// ========== 推理引擎初始化 ==========
// 创建推理引擎，加载微调后的模型（LoRA 时加载基础模型并挂上适配器）
const engine = await PtEngine.create(infer_model, { adapters: adapters });

// ========== 对话模板配置 ==========
// 获取与推理引擎模型匹配的对话模板
// engine.model.modelMeta.template: 从模型元数据中获取模板类型
// engine.tokenizer: 使用推理引擎的分词器
// defaultSystem: 设置默认的系统提示语
const infer_template = getTemplate(engine.model.modelMeta.template as TemplateName, engine.tokenizer, { defaultSystem: infer_system });

// ========== 设置默认模板 ==========
// 将配置好的模板设置为推理引擎的默认模板
// 这样在调用engine.infer()时会自动使用此模板格式化输入输出
// 也可以在每次调用engine.infer()时单独传入template参数
engine.defaultTemplate = infer_template;
logger.info(`engine: ${infer_model}${adapters.length ? ` + adapters ${adapters.join(', ')}` : ''}, template ${infer_template.name}`);

// %% [markdown]
// 开始推理...
//
// （原 notebook 的流式循环里误用了 `resp_list`，这里已修正：每个流式块的增量文本是 `resp.choices[0].delta.content`。）

// %%
const query_list = [
  'who are you?',
  '晚上睡不着觉怎么办？',
  '你是谁训练的？',
];

async function infer_stream(engine: InferEngine, infer_request: InferRequest) {
  const request_config = new RequestConfig({ max_tokens: max_new_tokens, temperature: temperature, stream: true });
  const gen_list = await engine.infer([infer_request], request_config);
  const query = infer_request.messages[0].content;
  process.stdout.write(`query: ${query}\nresponse: `);
  for await (const resp of gen_list[0]) {
    process.stdout.write(resp.choices[0].delta.content ?? '');
  }
  process.stdout.write('\n');
}

async function infer(engine: InferEngine, infer_request: InferRequest) {
  const request_config = new RequestConfig({ max_tokens: max_new_tokens, temperature: temperature });
  const resp_list = await engine.infer([infer_request], request_config);
  const query = infer_request.messages[0].content;
  const response = resp_list[0].choices[0].message.content;
  console.log(`query: ${query}`);
  console.log(`response: ${response}`);
}

async function run_queries() {
  const infer_func = stream ? infer_stream : infer;
  for (const query of query_list) {
    await infer_func(engine, new InferRequest({ messages: [{ role: 'user', content: query }] }));
    console.log('-'.repeat(50));
  }
}
await run_queries();

// %% [markdown]
// ## Web-UI

// %%
// ========== Web-UI启动命令 ==========
// 使用微调后的模型启动Web界面（tsft web-ui 对应 swift web-ui；LoRA 时加上 --adapters）
import { freePort, tsftServer } from './notebooks/shell';

// 方法1：查看实际的检查点路径
console.log(`实际的检查点路径: ${last_model_checkpoint}`);

// 方法2：启动Web-UI（端口 7860，被占用时换一个空闲端口）
const webui = await tsftServer([
  'web-ui',
  '--model', infer_model, ...adapters.flatMap((a) => ['--adapters', a]),
  '--temperature', '0',
  '--infer_backend', 'pt',
  '--max_new_tokens', '2048',
  '--port', String(await freePort(7860)),
]);
console.log(`Web-UI: ${webui.url} （在浏览器中打开即可聊天）`);

// 检查页面能打开，然后停止 Web-UI，让 notebook 能运行结束；想一直使用时，去掉下面两行，
// 或在终端运行：npx tsft web-ui --model <检查点路径>
console.log(`GET / → ${(await fetch(webui.url)).status}`);
await webui.stop();
console.log('Web-UI 已停止');
